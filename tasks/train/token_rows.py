"""A CLIP's token table trained on the rows its captions use, with the rest in closed form.

open_clip's token table has a row per BPE token, 49,408 of them; the built-in captions use 33.
Under AdamW every step still fills the whole table's gradient, clips it and updates it: about
9 of a clip-tiny step's 89 ms (batch 128) on a 2-core CPU, 17 of clip-small's 200. A row that
no caption uses has a zero gradient at every step, so its Adam moments stay zero and AdamW
only decays it:

    row_n = row_0 * prod_{s < n} (1 - lr_s * weight_decay),

and an EMA of the weights follows it by a scalar recursion (`decay_factors`). So the CLIP
trainer shrinks the table to the used rows (`TokenRows`, `shrink_token_table`) and trains
that, and `RowsCheckpoint` writes and reads checkpoints in the full format: the unused rows
are the initial ones times that product, their Adam moments zero. The weights are those of
training the whole table up to float rounding (AdamW multiplies the float32 rows at every
step; here the product is taken in float64 and applied once), and the files are the same, so
a checkpoint written by either way of training resumes under the other. The ids map to
positions in ascending order, so EOT, the largest id, stays the largest, where open_clip's
pooling looks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tasks.store.checkpoint import CheckpointDir, read_weights, save_checkpoint
from tasks.train.recipe import TrainConfig, ema_decay_at, lr_factor

TABLE = "token_embedding.weight"  # open_clip.CLIP's token table, by state-dict key


@dataclass(frozen=True)
class TokenRows:
    """The token ids a training uses (ascending) and the size of the table they index."""

    ids: Tensor  # (R,) int64, ascending
    vocab: int

    @classmethod
    def of(cls, vocab: int, *tokens: Tensor) -> TokenRows:
        """The ids that occur in any of `tokens` (token tensors of any shape)."""
        ids = torch.unique(torch.cat([t.reshape(-1) for t in tokens]))
        if len(ids) and (ids[0] < 0 or ids[-1] >= vocab):
            raise ValueError(f"token ids must lie in [0, {vocab}), got {ids[0]}..{ids[-1]}")
        return cls(ids, vocab)

    def index(self, tokens: Tensor) -> Tensor:
        """Token ids -> their rows in the shrunk table, same shape (order kept)."""
        position = torch.searchsorted(self.ids, tokens).clamp(max=len(self.ids) - 1)
        missing = self.ids[position] != tokens
        if missing.any():
            unknown = torch.unique(tokens[missing])[:10].tolist()
            raise ValueError(f"token ids {unknown} are not among the trained rows")
        return position


def shrink_token_table(model: nn.Module, rows: TokenRows) -> Tensor:
    """Replace `model.token_embedding` by a trainable table of `rows` alone (no random draw:
    the global RNG stays where it was). Returns the full table as it was, (vocab, D)."""
    table = model.token_embedding.weight.detach().clone()
    if len(table) != rows.vocab:
        raise ValueError(f"the token table has {len(table)} rows, the ids index {rows.vocab}")
    model.token_embedding = nn.Embedding.from_pretrained(table[rows.ids], freeze=False)
    return table


def optimizer_index(model: nn.Module, key: str = TABLE) -> int:
    """Where parameter `key` sits in the optimizer's state: `tasks.train.trainer.train`
    optimizes the model's trainable parameters in `parameters()` order."""
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if key not in trainable:
        raise ValueError(f"{key} is not a trainable parameter of the model")
    return trainable.index(key)


def decay_factors(cfg: TrainConfig, steps: int) -> tuple[float, float]:
    """(model, EMA): what the first `steps` optimizer steps of `cfg` multiply a row by
    whose gradient and Adam moments are zero. AdamW shrinks it by (1 - lr_s * weight_decay)
    at step s (the trainer's LambdaLR sets lr_s = cfg.lr * lr_factor(s, cfg)); the EMA, a
    copy of the initial model, then moves to it by `ema_decay_at(s)`:
    ema <- d * ema + (1 - d) * model. Without an EMA both factors are the model's."""
    model = ema = 1.0
    for s in range(steps):
        model *= 1 - cfg.lr * lr_factor(s, cfg) * cfg.weight_decay
        d = ema_decay_at(s, cfg) if cfg.ema_decay > 0 else 0.0
        ema = d * ema + (1 - d) * model
    return model, ema


@dataclass(frozen=True)
class RowsCheckpoint:
    """A `CheckpointDir` for a model trained on a shrunk token table (`shrink_token_table`):
    it writes and reads the full table and the full optimizer state, so the files are those
    of a model that trained its whole table."""

    inner: CheckpointDir
    rows: TokenRows
    initial: Tensor  # (vocab, D), the full table before the first step
    cfg: TrainConfig
    index: int  # the table's place in the optimizer state (`optimizer_index`)

    @property
    def path(self) -> Path:
        return self.inner.path

    def state(self) -> dict[str, Any] | None:
        state = self.inner.state()
        if state is not None:
            state["optimizer"] = self._moments(state["optimizer"], self._shrink)
        return state

    def load(self, module: nn.Module, name: str) -> None:
        tensors = read_weights(self.path, name)
        tensors[TABLE] = self._shrink(tensors[TABLE])
        module.load_state_dict(tensors)

    def save(
        self, modules: dict[str, nn.Module], config: dict[str, Any], state: dict[str, Any]
    ) -> None:
        factors = dict(zip(("model", "ema"), decay_factors(self.cfg, state["step"]), strict=True))
        weights = {}
        for name, module in modules.items():
            tensors = dict(module.state_dict())
            tensors[TABLE] = self._grow(tensors[TABLE], self.initial * factors[name])
            weights[name] = tensors
        zeros = torch.zeros_like(self.initial)
        state = state | {
            "optimizer": self._moments(state["optimizer"], lambda m: self._grow(m, zeros))
        }
        save_checkpoint(self.path, weights, config, state)

    def _shrink(self, table: Tensor) -> Tensor:
        """A full (vocab, D) table -> its trained rows. A table of another size passes
        through: it is a checkpoint of other settings, which the trainer refuses."""
        return table[self.rows.ids.to(table.device)] if len(table) == self.rows.vocab else table

    def _grow(self, trained: Tensor, rest: Tensor) -> Tensor:
        """The trained rows (R, D) written over a copy of `rest` (vocab, D)."""
        if trained.shape != (len(self.rows.ids), rest.shape[1]):
            raise ValueError(
                f"expected the {len(self.rows.ids)} trained rows, got {tuple(trained.shape)}"
            )
        full = rest.to(trained.device, copy=True)
        full[self.rows.ids.to(trained.device)] = trained.detach()
        return full

    def _moments(self, optimizer: dict[str, Any], resize) -> dict[str, Any]:
        """A copy of an optimizer state dict with the table's Adam moments resized (the
        tensors of the other parameters and the step count are shared, not copied)."""
        states = dict(optimizer["state"])
        if self.index in states:
            entry = dict(states[self.index])
            for key in ("exp_avg", "exp_avg_sq"):
                entry[key] = resize(entry[key])
            states[self.index] = entry
        return optimizer | {"state": states}
