"""Adam that leaves the untouched rows of embedding tables alone (as TensorFlow's LazyAdam does).

With plain Adam a row of a hashed user or item table keeps moving for a hundred steps
after its user was last seen (momentum), so every published delta carried thousands
of rows of users nobody had heard from (#18). Here a table's row, and its moments,
change only in a step that gave it a gradient; a step's own rows are updated exactly
as Adam would (each row counts its own steps for the bias correction). Dense
parameters are updated as by ``torch.optim.Adam``.
"""

from __future__ import annotations

import torch


class LazyRowAdam(torch.optim.Optimizer):
    """Adam; in a param group with ``lazy=True`` only the rows (first dimension) with a non-zero gradient step."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 lazy: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "lazy": lazy})

    def load_state_dict(self, state_dict: dict) -> None:
        """Also takes a ``torch.optim.Adam`` state (a checkpoint from before this optimiser): its one step
        count becomes every row's, and each group keeps the laziness it was built with."""
        lazy = [group["lazy"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, flag in zip(self.param_groups, lazy):
            group["lazy"] = flag
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                step = torch.as_tensor(state["step"], dtype=torch.float32, device=p.device)
                if flag and step.dim() == 0:
                    step = step.expand(p.shape[0]).clone()
                elif not flag and step.dim() == 1:
                    step = step.max()
                state["step"] = step

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    # Steps per row (lazy tables) or of the whole tensor: Adam's bias correction needs them.
                    state["step"] = torch.zeros(p.shape[0] if group["lazy"] else (), device=p.device)
                grad = p.grad
                if group["lazy"]:
                    rows = grad.reshape(len(grad), -1).abs().sum(dim=1).nonzero().squeeze(-1)
                    if rows.numel() == 0:
                        continue
                    self._update(p, grad[rows], state, rows, group, beta1, beta2)
                else:
                    self._update(p, grad, state, None, group, beta1, beta2)
        return loss

    @staticmethod
    def _update(p, grad, state, rows, group, beta1, beta2) -> None:
        exp_avg, exp_avg_sq, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
        if rows is None:
            m = exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            v = exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step += 1
            shape = ()
        else:
            m = exp_avg[rows].mul_(beta1).add_(grad, alpha=1 - beta1)
            v = exp_avg_sq[rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            exp_avg[rows], exp_avg_sq[rows] = m, v
            step[rows] += 1
            shape = (-1,) + (1,) * (p.dim() - 1)
        t = step if rows is None else step[rows]
        correction1 = (1 - beta1 ** t).reshape(shape)
        correction2 = (1 - beta2 ** t).reshape(shape)
        change = (m / correction1) / ((v / correction2).sqrt() + group["eps"]) * group["lr"]
        if rows is None:
            p.sub_(change)
        else:
            p[rows] = p[rows] - change
