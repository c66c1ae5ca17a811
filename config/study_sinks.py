# The sink study: ./run_study.sh config/study_sinks.py trains every registered normalizer and each output gate on the
# Bigram-Backcopy task (prepare_data.py bb; bigram_backcopy.py, Guo et al. 2024), 3 seeds each, and reports which
# normalizers park their dormant attention on BOS (an attention sink) and which go quiet instead, what it costs in
# loss and copy accuracy, how BOS's residual and value norms move, and what survives low-bit activations.
# Built to fit 15 minutes on 2 CPU cores: one layer (the smallest model with a copying head), one learning rate for
# every variant (the measured setting), short: the sink forms within the first 200 iterations.
from config.sinks import *
from normalizers.gates import GATES as _GATES  # _: not a setting

study_gates = [gate for gate in _GATES if gate != "none"]
study_seeds = [0, 1, 2]
study_max_tokens = 8192
