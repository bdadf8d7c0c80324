"""The fixed float64 inputs of the golden-value tests (``test_losses_golden.py``).

The golden numbers pinned in ``test_losses_golden.py`` were computed by running the
*original* MGCA and GLoRIA loss code on exactly these tensors (see ``docs/losses.md``,
"Golden values", for the procedure). Keep this construction unchanged: any change to
it invalidates every pinned number. :func:`checksum` pins the tensors themselves, so a
change of torch's random generator shows up as "the inputs changed", not as a loss that
drifted.

Layout, as medvl's :class:`~medvl.models.outputs.EncoderOutput` holds it:

* ``B = 6`` pairs, embedding size ``D = 8``;
* image tokens: a ``3 x 3`` grid, ``N = 9``, row-major, all real;
* word tokens: ``T = 7`` positions, the first ``WORD_LENGTHS[b]`` real, the rest
  padding (random values: a loss must not depend on them unless it is asked to);
* word attention: uniform in ``[0, 1)`` on real words and 0 on padding, with one real
  word of sample 2 at exactly 0 (MGCA's code leaves such a word out of the quantile
  clip and gives it weight 0); patch attention: a softmax, so positive everywhere;
* ``K = 10`` prototypes, not normalised (both implementations normalise them);
* weights of a two-head ``nn.MultiheadAttention`` for the learned token attention.
"""

from __future__ import annotations

import torch

SEED = 20261122
B, D, GRID, T, K, HEADS = 6, 8, (3, 3), 7, 10, 2
N = GRID[0] * GRID[1]
WORD_LENGTHS = (7, 5, 4, 6, 3, 7)
ZERO_ATTENTION_WORD = (2, 1)  # (sample, word): a real word whose attention is exactly 0


def golden_inputs(padded: bool = True) -> dict[str, torch.Tensor]:
    """The inputs, float64, from one seeded generator.

    Args:
        padded: ``False`` gives every report all ``T`` words and no zero-attention word
            (the same random draws otherwise), the case where medvl's defaults and
            MGCA's code must agree.
    """
    g = torch.Generator().manual_seed(SEED)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    lengths = torch.tensor(WORD_LENGTHS if padded else (T,) * B)
    word_mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    out = {
        "image_embeds": randn(B, D),
        "text_embeds": randn(B, D),
        "patches": randn(B, N, D),  # row-major over GRID
        "words": randn(B, T, D),
        "word_mask": word_mask,
        "word_lengths": lengths,
        "word_attention": torch.rand(B, T, generator=g, dtype=torch.float64) * word_mask,
        "patch_attention": torch.softmax(randn(B, N), dim=1),
        "prototypes": randn(K, D),
        "mha_in_proj_weight": 0.3 * randn(3 * D, D),
        "mha_in_proj_bias": 0.1 * randn(3 * D),
        "mha_out_proj_weight": 0.3 * randn(D, D),
        "mha_out_proj_bias": 0.1 * randn(D),
    }
    if padded:
        out["word_attention"][ZERO_ATTENTION_WORD] = 0.0
    return out


def checksum(inputs: dict[str, torch.Tensor]) -> float:
    """A number that changes when any input tensor changes (sum of |x| weighted by position)."""
    total = 0.0
    for i, key in enumerate(sorted(inputs)):
        x = inputs[key].to(torch.float64).reshape(-1)
        total += float(((torch.arange(x.numel(), dtype=torch.float64) + 1 + i) * x.abs()).sum())
    return total
