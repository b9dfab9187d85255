"""Tensor parallel for LoRA layers, derived from the family's plan for the base layer.

A column-parallel base (output features split) splits B the same way and keeps A whole; a
row-parallel base (input features split) splits A by its input features and keeps B whole.
Every parameter becomes a DTensor, so each rank computes its slice of W x + s · B A x and
DTensor inserts the reductions A's and B's gradients need; the layer's inputs and outputs
keep the base style's layouts, so the modules around it see no difference.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from collie.peft.lora import LoraLinear


class LoraParallel(ParallelStyle):
    def __init__(self, base: ParallelStyle) -> None:
        super().__init__()
        if not isinstance(base, (ColwiseParallel, RowwiseParallel)):
            raise ValueError(f"tensor parallel: a LoRA layer can follow a column- or row-parallel plan, "
                             f"not {type(base).__name__}")
        self.colwise = isinstance(base, ColwiseParallel)
        # What the layer's matmuls need: the whole input (column split) or its last dim split (row split).
        self.input_layout, self.desired_input_layout = base.input_layouts[0], Replicate() if self.colwise else Shard(-1)
        self.output_layout, self.use_local_output = base.output_layouts[0], base.use_local_output

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if self.colwise:
            placements = {"weight": Shard(0), "bias": Shard(0), "lora_A.weight": Replicate(),
                          "lora_B.weight": Shard(0)}
        else:
            placements = {"weight": Shard(1), "bias": Replicate(), "lora_A.weight": Shard(1),
                          "lora_B.weight": Replicate()}

        def partition(name: str, submodule: nn.Module, mesh) -> None:
            for param_name, param in list(submodule.named_parameters(recurse=False)):
                full_name = f"{name}.{param_name}" if name else param_name
                placed = nn.Parameter(distribute_tensor(param, mesh, [placements[full_name]]),
                                      requires_grad=param.requires_grad)
                submodule.register_parameter(param_name, placed)

        return distribute_module(module, device_mesh, partition, self._prepare_input, self._prepare_output)

    def _prepare_input(self, module: nn.Module, inputs: tuple, device_mesh) -> tuple:
        x = inputs[0]
        if not isinstance(x, DTensor):
            x = DTensor.from_local(x, device_mesh, (self.input_layout,), run_check=False)
        if x.placements != (self.desired_input_layout,):
            x = x.redistribute(placements=(self.desired_input_layout,), async_op=True)
        return (x, *inputs[1:])

    def _prepare_output(self, module: nn.Module, output, device_mesh):
        if output.placements != (self.output_layout,):
            output = output.redistribute(placements=(self.output_layout,), async_op=True)
        return output.to_local() if self.use_local_output else output


def with_lora_styles(model: nn.Module, plan: dict) -> dict:
    """The plan with each LoRA layer's style derived from its base layer's."""
    return {name: LoraParallel(style) if isinstance(model.get_submodule(name), LoraLinear) else style
            for name, style in plan.items()}
