"""`collie serve MODEL_OR_CHECKPOINT [key=value …]`: the OpenAI API over HTTP (uvicorn), on one
process or under torchrun with `tp_size` / `pp_size` (rank 0 listens, every rank decodes).

Listens on 127.0.0.1 unless `--host` says otherwise. SIGTERM or Ctrl-C stops taking requests,
answers the ones in flight, then exits 0.
"""

from __future__ import annotations

import argparse
import logging

from collie.commands.paths import check_model_dir
from collie.config import CollieConfig
from collie.inference import load_for_inference
from collie.launch_env import read_launch_env
from collie.models.registry import spec_for
from collie.serve.limits import context_length, model_name

log = logging.getLogger("collie")

NAME = "serve"
HELP = "an OpenAI-compatible HTTP server for a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an HF model directory, a collie checkpoint, peft adapters, or their URL")
    parser.add_argument("overrides", nargs="*", help="config overrides: tp_size=2 param_dtype=bfloat16 …")
    parser.add_argument("--config", help="a collie YAML config (layout, dtypes, tokenizer)")
    parser.add_argument("--base", metavar="DIR",
                        help="for adapters: their base model directory (default: the one they record)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-name", help="the model id clients ask for (default: the directory's name)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="rows decoded together")
    parser.add_argument("--max-queue", type=int, default=64, help="rows waiting before requests get 503")
    parser.add_argument("--default-max-tokens", type=int, default=1024,
                        help="a chat request without max_tokens gets at most this many (default 1024)")
    parser.add_argument("--batching", choices=("continuous", "static"), default="continuous",
                        help="continuous (default): requests join and leave the batch at every token, over a "
                             "paged KV cache; static: a batch runs until its longest request ends")
    parser.add_argument("--max-num-tokens", type=int, default=512,
                        help="continuous batching: prompt tokens prefilled per step (longer prompts in chunks)")
    parser.add_argument("--kv-cache-gib", type=float,
                        help="continuous batching: KV cache size (default: 90%% of a GPU's free memory; on a CPU "
                             "what --max-batch-size full-context rows need, at most a quarter of free RAM)")


def run(args: argparse.Namespace) -> None:
    # Imported here, not at the top: `collie` builds every command's parser, and the serving stack
    # (FastAPI, uvicorn, pydantic; 20 MB resident) is for this command only.
    from collie.serve.app import ServedModel  # the serving stack (above)
    from collie.serve.http import check_port, listening_socket  # the serving stack (above)
    from collie.serve.standalone import serve_until_stopped  # the serving stack (above)

    if min(args.max_batch_size, args.max_queue, args.default_max_tokens, args.max_num_tokens) < 1:
        raise ValueError("--max-batch-size, --max-queue, --default-max-tokens and --max-num-tokens: must be at least 1")
    if args.kv_cache_gib is not None and not args.kv_cache_gib > 0:
        raise ValueError(f"--kv-cache-gib: must be a positive size in GiB, got {args.kv_cache_gib}")
    check_port(args.port, "--port")
    if read_launch_env().get("RANK", "0") == "0":
        # The port is tried before the model loads: a taken one fails now, not after a long load.
        listening_socket(args.host, args.port, "--port").close()
    check_model_dir(args.model)
    if args.base is not None:
        check_model_dir(args.base)
    config = CollieConfig.load(args.config, args.overrides)
    config.validate()
    loaded = load_for_inference(args.model, config, base=args.base)
    dims = spec_for(loaded.hf_config).dims(loaded.hf_config)
    served = ServedModel(model_name(args.model, args.model_name), loaded.tokenizer,
                         context_length(dims, loaded.tokenizer, loaded.model), default_max_tokens=args.default_max_tokens)
    serve_until_stopped(loaded.model, loaded.tokenizer, loaded.forward_context, served, args.host, args.port,
                        loaded.world_size, args.max_batch_size, args.max_queue, batching=args.batching,
                        max_num_tokens=args.max_num_tokens, kv_cache_gib=args.kv_cache_gib)
