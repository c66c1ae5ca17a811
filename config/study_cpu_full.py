# The full CPU study: ./run_study.sh config/study_cpu_full.py trains, on the quick study's model and schedule
# (config/study_cpu.py), every registered normalizer and each output gate (attn_gate) on softmax, the baseline, each
# of them with AdamW and with Muon (the optimizer as a control); it tunes the learning rate per variant and trains 3
# seeds at each one's choice. With the registry of 10 normalizers and 3 gates besides none: 13 variants x 2
# optimizers = 26 variants. Stage 1: every variant x learning rate on seed 0 (26 x 6 = 156 runs); stage 2: seeds 1,
# 2 at the chosen rate (26 x 2 = 52 runs): 208 runs, about 4 hours on 2 CPU cores (results/cpu-full-study/).
# The report compares each variant with softmax under the same optimizer, and each variant under Muon with itself
# under AdamW. A learning rate chosen at the edge of the grid is flagged in the report: then widen the grid here.
# The grid: a first one, 2e-3 to 8e-3, put softmax, softmax1 and symax at its top and diff and softpick at its bottom;
# hence 1e-3 to 1.6e-2. With it, 6 of the 13 Muon variants chose 1.6e-2, hence 3.2e-2 too, where every variant
# did worse: every choice now lies inside the grid.
from config.study_cpu import *
from normalizers.gates import GATES as _GATES  # _: not a setting

# study_norms unset: every registered normalizer
study_gates = [gate for gate in _GATES if gate != "none"]
study_optimizers = ["adamw", "muon"]
study_seeds = [0, 1, 2]
study_sweep = {"learning_rate": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2]}
study_settings = {}  # the quick study's per-variant rates come from this study's sweep: not inherited
eval_iters = 20  # the quick study cuts evaluation to fit its budget; this study keeps it
study_max_tokens = 32768
