"""The decoder network several families share (LLaMA, Qwen2, Mistral, InternLM 1/2, ChatGLM 2/3,
GLM, and with their own blocks MOSS and ChatGLM v1): settings, rotary, attention, MLPs, blocks,
the causal-LM model, its tensor-parallel plan and the shapes `collie init-model` writes. A family
folder holds only what is its own (config, checkpoint names, spec)."""
