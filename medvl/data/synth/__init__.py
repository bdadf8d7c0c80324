"""Synthetic chest radiograph and CT corpus with ground truth that agrees with pixels and text.

Use :func:`generate_corpus` (library) or ``medvl synth --out DIR`` (command line).
See ``docs/synthetic_corpus.md`` for what is drawn and how it is stored.
"""

from medvl.data.synth.config import SynthConfig
from medvl.data.synth.corpus import generate_corpus, render_study
from medvl.data.synth.plan import FindingSpec, StudyPlan, plan_corpus

__all__ = ["FindingSpec", "StudyPlan", "SynthConfig", "generate_corpus", "plan_corpus", "render_study"]
