"""The divergence guard: a run whose global model gets worse stops, with the best round's weights.

A poisoning the update screen misses still shows in the global evaluation loss. After each round the loss
is compared with round 0's (far above it at once, or above it for ``divergence-rounds`` evaluations) and
with its own best (``divergence-rounds`` rises ending well above it); a non-finite loss has diverged. The
round loop then restores the best weights and the run ends non-zero. Under noised evaluation counts no loss
is sent, so the guard watches nothing (and says so). Thresholds and why: docs/design_notes.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flwr.app import ArrayRecord

RISE_MARGIN = 0.25  # a rising streak stops the run only once the loss is this share above the best loss
ROUND0_MARGIN = 0.05  # a loss this share above round 0's (the untrained model's), divergence-rounds in a row
ROUND0_FAIL = 2.0  # a loss this many times round 0's has diverged at once


@dataclass
class DivergenceGuard:
    rounds: int  # rises in a row that stop the run (run-config divergence-rounds); 0: off
    losses: list[tuple[int, float]] = field(default_factory=list)  # (round, loss) of every evaluated round
    best_round: int = -1
    best_loss: float = math.inf
    best_arrays: ArrayRecord | None = None
    unknown: bool = False  # some round's loss was unknown (noised counts): the guard did not judge it

    def observe(self, server_round: int, entry: dict, arrays: ArrayRecord) -> str | None:
        """Take a round's evaluation (its metrics.jsonl entry); the reason the run diverged, else None."""
        if not self.rounds:
            return None
        loss = entry.get("loss")
        if loss is None or not math.isfinite(loss):
            if entry.get("groups_dp") or entry.get("eval_examples", 0) == 0:
                self.unknown = True  # noised counts carry no loss, or nothing was evaluated: no verdict
                return None
            return f"round {server_round}: the global evaluation loss is {loss} (not finite)"
        reason = self._judge(server_round, loss)
        self.losses.append((server_round, loss))
        if loss < self.best_loss:
            self.best_round, self.best_loss, self.best_arrays = server_round, loss, arrays
        return reason

    def _judge(self, server_round: int, loss: float) -> str | None:
        if not self.losses:
            return None
        first_round, first = self.losses[0]
        if first_round == 0 and loss > ROUND0_FAIL * first:
            return (f"round {server_round}: the global evaluation loss {loss:.4g} is above round 0's {first:.4g} "
                    f"(the untrained model's), {loss / first:.1f} x")
        above = [x for r, x in self.losses[1:][-(self.rounds - 1):] if r > 0] + [loss] if self.rounds > 1 else [loss]
        if first_round == 0 and len(above) == self.rounds and all(x > (1 + ROUND0_MARGIN) * first for x in above):
            return (f"round {server_round}: the global evaluation loss has been above round 0's {first:.4g} (the "
                    f"untrained model's) for {self.rounds} rounds in a row, now {loss:.4g}")
        recent = [x for _, x in self.losses[-self.rounds:]] + [loss]
        rising = len(recent) == self.rounds + 1 and all(b > a for a, b in zip(recent, recent[1:]))
        if rising and loss > (1 + RISE_MARGIN) * self.best_loss:
            return (f"round {server_round}: the global evaluation loss rose {self.rounds} rounds in a row, to "
                    f"{loss:.4g} ({loss / self.best_loss:.2f} x the best, {self.best_loss:.4g} in round "
                    f"{self.best_round}; divergence-rounds {self.rounds})")
        return None

    def resume(self, history: list[dict], arrays: ArrayRecord, last_round: int) -> None:
        """Continue a checkpointed run: its losses so far; the best weights known are the checkpoint's."""
        for entry in history:
            loss = entry.get("loss")
            if loss is not None and math.isfinite(loss):
                self.losses.append((entry["round"], loss))
                if entry["round"] == last_round:
                    self.best_round, self.best_loss, self.best_arrays = last_round, loss, arrays

    def verdict(self, reason: str, server_round: int) -> dict:
        """The summary's ``diverged`` field."""
        return {"round": server_round, "reason": reason, "rolled_back_to_round": self.best_round,
                "best_loss": round(self.best_loss, 6)}


def start_guard(rounds: int, history: list[dict], arrays: ArrayRecord, last_round: int) -> DivergenceGuard:
    """The run's guard, knowing the rounds evaluated so far (round 0's, or a resumed run's) and ``arrays``,
    the weights of ``last_round``."""
    guard = DivergenceGuard(rounds)
    if rounds:
        guard.resume(history, arrays, last_round)
    return guard


def rolled_back_summary(summary: dict, history: list[dict], verdict: dict) -> dict:
    """summary.json of a diverged run: its ``diverged`` verdict, and ``final`` the round whose weights it keeps."""
    best = next((e for e in history if e.get("round") == verdict["rolled_back_to_round"]), None)
    final = summary.get("final", {})
    if best is not None:
        final = {k: best[k] for k in final if k in best} or {"round": best["round"]}
    return {**summary, "diverged": verdict, "final": final, "diverged_last_round": summary.get("final", {})}
