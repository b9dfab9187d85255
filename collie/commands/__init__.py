"""One module per `collie` command, each with `NAME`, `HELP`, `add_arguments(parser)` and
`run(args)`; `collie.cli` only dispatches. A new command is a module here, listed below."""

from collie.commands import convert, evaluate, expand_vocab, generate, init_model, serve, train

COMMANDS = (train, evaluate, serve, init_model, generate, expand_vocab, convert)

__all__ = ["COMMANDS"]
