"""
Every setting of a training run, in one dataclass (TrainConfig), and how a run's settings are assembled:
the defaults below, then config files (plain Python assignments, like the ones in this folder), then
--key=value overrides, in argument order. Each value is type-checked; an unknown key is an error that
suggests the closest one. train.py saves the whole TrainConfig in every checkpoint and logs it.
"""

import ast
import dataclasses
import difflib
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

import kernels
from model import GPTConfig

class ConfigError(ValueError):
    """A bad setting or bad data: train.py reports it in one line that says what to do, without a traceback."""


def default_device():
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def default_dtype():
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = ""  # empty: out/<dataset>-<n_layer>x<n_embd>-<attn_norm>-s<seed>
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = False
    always_save_checkpoint: bool = True
    keep_checkpoints: int = 1  # keep this many newest checkpoints (ckpt.pt plus ckpt-<iter>.pt)
    init_from: str = "auto"  # 'scratch', 'resume' (out_dir/ckpt.pt), or 'auto' (resume if one exists)
    log_stats: bool = True  # kurtosis, outliers and attention statistics at every eval (see analysis/)
    # wandb
    wandb_log: bool = False
    wandb_project: str = "attnorm"
    wandb_run_name: str = ""  # empty: '<attn_norm>-s<seed>'
    # data
    dataset: str = "openwebtext"  # a folder data/<dataset> written by prepare_data.py
    gradient_accumulation_steps: int = 40  # global: split across DDP ranks
    batch_size: int = 12  # per micro-step and rank
    block_size: int = 1024
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    attn_norm: str = "softmax"
    attn_impl: str = "auto"
    symax_eta: float = 1.0
    symax_learn_eta: bool = False
    # AdamW
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    max_nonfinite_steps: int = 10  # skip steps with a NaN/Inf loss or gradient; stop after this many in a row
    # learning rate schedule: linear warmup, cosine decay to min_lr
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5
    # system
    seed: int = 1337
    device: str = dataclasses.field(default_factory=default_device)  # cpu, cuda, cuda:1, mps
    dtype: str = dataclasses.field(default_factory=default_dtype)  # float32, bfloat16, float16
    compile: bool = True

    def validate(self, world_size=1):
        positive = ("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size",
                    "block_size", "n_layer", "n_head", "n_embd", "keep_checkpoints", "learning_rate")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("max_iters", "warmup_iters", "lr_decay_iters", "min_lr", "weight_decay", "grad_clip"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        choices = {"init_from": ("scratch", "resume", "auto"), "dtype": ("float32", "bfloat16", "float16")}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {', '.join(valid)}")
        if self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"device={self.device!r}: use cpu, cuda, cuda:N or mps")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA GPU is visible: use --device=cpu")
        if self.gradient_accumulation_steps % world_size:
            raise ConfigError(f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) must be a "
                             f"multiple of the number of processes ({world_size})")
        try:
            self.model_config()  # checks the architecture (n_embd % n_head, attn_norm, ...)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        reason = kernels.unavailable_reason(self.attn_norm, self.device.split(":")[0], self.dropout)
        if self.attn_impl == "fused" and reason:
            raise ConfigError(f"attn_impl=fused cannot run attn_norm={self.attn_norm} on {self.device}: {reason}. "
                             f"Use attn_impl=auto (the reference where no fused kernel runs) or reference")

    def model_config(self, vocab_size=50304):
        keys = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}
        return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in keys})


def parse_value(key, text, expected):
    """'--key=value' text to the type of the TrainConfig field, with an error that names the key."""
    if expected is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--{key}={text}: expected True or False")
    if expected is str:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--{key}={text}: expected {'an' if expected is int else 'a'} {expected.__name__}") from None
    return value


def set_key(cfg, key, value, source):
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    if key not in fields:
        close = difflib.get_close_matches(key, fields, n=1)
        raise ConfigError(f"unknown config key {key!r} in {source}" + (f"; did you mean {close[0]!r}?" if close else ""))
    expected = fields[key]
    if isinstance(value, str) and expected is not str and source == "the command line":  # config files are typed
        value = parse_value(key, value, expected)
    if expected is float and type(value) is int:
        value = float(value)
    if type(value) is not expected:
        raise ConfigError(f"{key} must be {'an' if expected is int else 'a'} {expected.__name__}, got {value!r} ({type(value).__name__}) in {source}")
    setattr(cfg, key, value)


def load_config(argv):
    cfg = TrainConfig()
    for arg in argv:
        if arg.startswith("--"):
            key, sep, value = arg[2:].partition("=")
            if not sep:
                raise ConfigError(f"{arg}: overrides are written --key=value")
            set_key(cfg, key, value, "the command line")
        else:
            if not Path(arg).is_file():
                raise ConfigError(f"config file {arg} not found (config files live in config/)")
            scope = {}
            try:
                exec(compile(Path(arg).read_text(), arg, "exec"), scope)  # config files are plain assignments
            except Exception as e:  # a typo in a config file: name the file and line, not a traceback
                lines = [e.lineno] if isinstance(e, SyntaxError) else [
                    f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == arg]
                raise ConfigError(f"config file {arg}" + (f", line {lines[-1]}" if lines else "") + f": "
                                 f"{type(e).__name__}: {e}. Config files hold plain assignments such as "
                                 f"n_layer = 6") from None
            for key, value in scope.items():
                if not key.startswith("_") and not callable(value) and type(value).__name__ != "module":
                    set_key(cfg, key, value, arg)
    return cfg
