"""LLaMA 1/2/3 (and Qwen2, Mistral, which store LLaMA's names): their checkpoint names and specs.
The network is the shared decoder, `collie.models.common.decoder.LlamaForCausalLM` (also
`collie.models.LlamaForCausalLM`); it is not imported here, since the registry imports this
package's spec below the model classes."""
