"""The fit domain of a step model: the largest prompt, context and batch it was fitted or measured on.

A step model is a curve fitted to iterations of some shapes; a request longer than any prompt it saw, a
context longer than any it decoded at, or a batch larger than any it timed is served by extrapolation.
The simulator counts those requests per config (``sim.metrics``) so a result that rests on extrapolation
says so. The domain travels with the profile as optional columns of ``step_models.csv``
(``FIT_DOMAIN_COLUMNS``); an absent or empty cell is *unknown* (older profile sets, analytic models), and
nothing is counted against an unknown limit. It is kept apart from ``StepModel``: it describes where the
model's numbers come from, not how long an iteration takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FIT_DOMAIN_COLUMNS = ("fit_max_prompt_tokens", "fit_max_context_tokens", "fit_max_batch")


class FitDomainError(ValueError):
    """A fit-domain value that cannot be a token count or a batch size."""


@dataclass(frozen=True, slots=True)
class FitDomain:
    """Largest prompt (tokens of one prefill), context (prompt + output tokens a sequence held while its
    iterations were timed) and batch (sequences of one iteration) in the fit; None = unknown."""

    max_prompt_tokens: int | None = None
    max_context_tokens: int | None = None
    max_batch: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_context_tokens", "max_batch"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FitDomainError(f"fit domain field '{name}' must be a whole number >= 1 or unknown, got {value!r}")

    @property
    def known(self) -> bool:
        """Whether any limit is known (a fully unknown domain counts nothing)."""
        return any(v is not None for v in (self.max_prompt_tokens, self.max_context_tokens, self.max_batch))

    def as_columns(self) -> dict[str, float]:
        """The step-model table's columns (NaN for unknown, written as an empty cell)."""
        values = (self.max_prompt_tokens, self.max_context_tokens, self.max_batch)
        return {c: (math.nan if v is None else v) for c, v in zip(FIT_DOMAIN_COLUMNS, values)}

    def as_dict(self) -> dict[str, int | None]:
        return {"max_prompt_tokens": self.max_prompt_tokens, "max_context_tokens": self.max_context_tokens,
                "max_batch": self.max_batch}

    @classmethod
    def from_mapping(cls, values: dict, where: str = "step model") -> "FitDomain":
        """From a table row; a negative, fractional or non-numeric value names ``where`` and the field."""
        kwargs = {}
        for column, name in zip(FIT_DOMAIN_COLUMNS, ("max_prompt_tokens", "max_context_tokens", "max_batch")):
            raw = values.get(column)
            if _blank(raw):
                kwargs[name] = None
                continue
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise FitDomainError(f"{where}, field '{column}': not a number ({raw!r})") from None
            if not math.isfinite(value) or value != int(value) or value < 1:
                raise FitDomainError(f"{where}, field '{column}': must be a whole number >= 1 (tokens or "
                                     f"sequences) or empty for unknown, got {raw!r}")
            kwargs[name] = int(value)
        return cls(**kwargs)


UNKNOWN_DOMAIN = FitDomain()


def _blank(value) -> bool:
    """An absent or empty cell (None, NaN or "")."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                                  and not value.strip())
