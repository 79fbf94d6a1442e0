"""Privacy spent by DP-SGD, from a maintained accountant (Google's dp_accounting).

DP-SGD's guarantee is stated for Poisson subsampling with rate q = batch/N;
jaxpet, like most DP-SGD code, trains on shuffled fixed-size batches, and
reports the Poisson-subsampled RDP bound as the customary approximation.
"""

from __future__ import annotations

import math


def _check(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier}.")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling rate (batch / dataset size) must be in (0, 1], got {sampling_rate}.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}.")


def check_dpsgd_flags(noise_multiplier: float, clip_norm: float, delta: float) -> None:
    """Raises ValueError naming the bad DP-SGD flag (the experiments' shared check)."""
    if not noise_multiplier > 0:
        raise ValueError(f"--dp_noise_multiplier must be > 0, got {noise_multiplier}.")
    if not clip_norm > 0:
        raise ValueError(f"--dp_clip_norm must be > 0, got {clip_norm}.")
    if not 0 < delta < 1:
        raise ValueError(f"--dp_delta must be in (0, 1), got {delta}.")


def dpsgd_event(noise_multiplier: float, sampling_rate: float, steps: int):
    """The dp_accounting event of ``steps`` Poisson-subsampled Gaussian steps."""
    import dp_accounting  # imported lazily: only DP runs need it

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sampling_rate,
                                            dp_accounting.GaussianDpEvent(noise_multiplier)),
        steps)


def dpsgd_epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float,
                  accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after ``steps`` DP-SGD steps ("rdp" or "pld" accountant)."""
    _check(noise_multiplier, sampling_rate, steps, delta)
    from dp_accounting import pld, rdp

    if accountant == "rdp":
        acc = rdp.RdpAccountant()
    elif accountant == "pld":
        acc = pld.PLDAccountant()
    else:
        raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}.")
    acc.compose(dpsgd_event(noise_multiplier, sampling_rate, steps))
    return float(acc.get_epsilon(delta))


def training_epsilon(noise_multiplier: float, batch_size: int, dataset_size: int, epochs: int,
                     delta: float) -> dict:
    """Epsilon of a DP-SGD training run, with the numbers it came from (for results files)."""
    if dataset_size < 1 or batch_size < 1:
        raise ValueError("batch_size and dataset_size must be >= 1.")
    steps = epochs * math.ceil(dataset_size / batch_size)
    rate = min(1.0, batch_size / dataset_size)
    return {"epsilon": dpsgd_epsilon(noise_multiplier, rate, steps, delta), "delta": delta,
            "noise_multiplier": noise_multiplier, "sampling_rate": rate, "steps": steps,
            "accountant": "RDP, Poisson-subsampled Gaussian (dp_accounting); an approximation "
                          "here, where batches are shuffled, not Poisson-sampled"}
