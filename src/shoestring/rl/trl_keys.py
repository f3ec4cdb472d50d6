"""Every key of a TRL GRPO config and what ``shoestring grpo`` does with it, as data.

This module is one idea: the table. TRL's ``trl grpo`` script reads one flat YAML into four
dataclasses (``GRPOConfig``, which extends transformers' ``TrainingArguments``; ``ModelConfig``;
``ScriptArguments`` with the script's ``reward_funcs``; ``DatasetMixtureConfig``), so a config
people bring from TRL holds keys of all four. Each key is one of:

``same``
    a ``shoestring grpo`` field with TRL's name and meaning (a few TRL-only values, such as
    ``scale_rewards: true``, are translated);
``mapped``
    translated into shoestring fields (``bf16`` -> ``dtype``, ``use_peft``/``lora_r`` ->
    ``lora_rank``, ``dataset_name`` -> ``dataset`` ...) by :mod:`shoestring.rl.trl_config`;
``ignored``
    no meaning for a single-process run with shoestring's engine and run directory (hub
    uploads, trackers, DeepSpeed, dataloader plumbing ...): logged once with the reason, never
    an error;
``unsupported``
    a TRL feature that changes what is trained and shoestring does not implement: accepted at
    the values under which TRL behaves as shoestring does (``accept``), a config error naming the
    key otherwise (a silently different algorithm costs a whole run). ``notice_only`` entries are
    logged instead of refused (they only differ in a corner the log names).

``tests/test_trl_config.py`` checks that every field of the installed TRL's dataclasses has an
entry here, and ``docs/grpo.md`` carries the table :func:`shoestring.rl.trl_config.
trl_key_table` renders from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "TRL_DEFAULTS",
    "TRL_DEFAULTS_NOT_APPLIED",
    "TRL_KEYS",
    "TRL_LORA_DEFAULTS",
    "TRL_SCRIPT_REWARDS",
    "TrlKey",
]

#: the reward names TRL's ``trl grpo`` script knows (its registry; ``trl:NAME`` here)
TRL_SCRIPT_REWARDS = (
    "accuracy_reward",
    "reasoning_accuracy_reward",
    "think_format_reward",
    "get_soft_overlong_punishment",
)

GRPO, TA, MODEL, SCRIPT, MIXTURE, LEGACY = (
    "GRPOConfig",
    "TrainingArguments",
    "ModelConfig",
    "ScriptArguments",
    "DatasetMixtureConfig",
    "older TRL/transformers",
)


@dataclass(frozen=True)
class TrlKey:
    """One TRL key: where it comes from, how it is handled, and why (for the log and docs)."""

    source: str
    kind: str  # same | mapped | ignored | unsupported
    note: str
    accept: tuple[Any, ...] = ()
    notice_only: bool = False


TRL_KEYS: dict[str, TrlKey] = {}


def _add(source: str, kind: str, note: str, *keys: str, **kw: Any) -> None:
    for key in keys:
        TRL_KEYS[key] = TrlKey(source, kind, note, **kw)


# ------------------------------------------------------------------ same name, same meaning
_add(
    GRPO,
    "same",
    "same field",
    "trust_remote_code",
    "disable_dropout",
    "num_generations",
    "max_completion_length",
    "temperature",
    "top_p",
    "top_k",
    "beta",
    "num_iterations",
    "epsilon",
    "epsilon_high",
    "reward_weights",
    "sapo_temperature_neg",
    "sapo_temperature_pos",
    "vespo_k_pos",
    "vespo_lambda_pos",
    "vespo_k_neg",
    "vespo_lambda_neg",
    "mask_truncated_completions",
)
_add(GRPO, "same", "same field; true -> group, false -> none (TRL's old booleans)", "scale_rewards")
_add(
    GRPO,
    "same",
    "same field; every TRL 1.16 loss type: grpo, bnpo, dr_grpo, dapo, luspo, cispo, sapo, vespo",
    "loss_type",
)
_add(GRPO, "same", "same field; token or sequence (GSPO)", "importance_sampling_level")
_add(GRPO, "same", "same field; null (TRL: all) keeps shoestring's 4", "num_completions_to_print")
_add(
    TA,
    "same",
    "same field",
    "per_device_train_batch_size",
    "num_train_epochs",
    "max_steps",
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "seed",
    "dataloader_num_workers",
    "gradient_checkpointing",
    "logging_steps",
    "save_steps",
)
_add(TA, "same", "same field; a value below 1 is a ratio of the total steps", "warmup_steps")
_add(
    TA,
    "same",
    "linear, cosine, constant (no warmup, as TRL's), constant_with_warmup; others refused",
    "lr_scheduler_type",
)
_add(TA, "same", "same field; null (TRL: keep all) keeps shoestring's 2", "save_total_limit")
_add(MODEL, "same", "same field", "model_name_or_path")
_add(
    LEGACY, "same", "same field (TRL before 1.0; TRL 1.x does not cut prompts)", "max_prompt_length"
)

# ----------------------------------------------------------------------------- mapped
_add(TA, "same", "the run directory (--out/--name win)", "output_dir")
_add(TA, "mapped", "true -> dtype=bf16 (autocast), false -> fp32 unless fp16", "bf16")
_add(TA, "mapped", "true is refused (no fp16 training; use bf16: true or fp32)", "fp16")
_add(TA, "mapped", "true -> device=cpu; false -> device=auto", "use_cpu")
_add(TA, "mapped", "steps: every save_steps; no: only the final checkpoint", "save_strategy")
_add(
    TA,
    "mapped",
    "true -> activation checkpointing (gradient_checkpointing)",
    "activation_checkpointing",
)
_add(LEGACY, "same", "warmup_steps = ceil(ratio * total steps) when warmup_steps=0", "warmup_ratio")
_add(LEGACY, "mapped", "true -> device=cpu", "no_cuda")
_add(
    GRPO,
    "mapped",
    "true -> samples logged every logging_steps; false -> log_completions_steps=0",
    "log_completions",
)
_add(
    MODEL,
    "mapped",
    "weight dtype: float32 as shoestring; bfloat16/auto logged (trained weights stay fp32, "
    "LoRA's frozen base is bf16 under bf16); float16 refused",
    "dtype",
)
_add(LEGACY, "mapped", "as ModelConfig's dtype", "torch_dtype")
_add(MODEL, "mapped", "true -> LoRA with lora_rank=lora_r; false -> full fine-tune", "use_peft")
_add(MODEL, "mapped", "lora_rank (with use_peft)", "lora_r")
_add(MODEL, "mapped", "lora_alpha (with use_peft)", "lora_alpha")
_add(MODEL, "mapped", "lora_dropout (with use_peft)", "lora_dropout")
_add(
    MODEL,
    "mapped",
    "lora_target_modules (with use_peft); unset = peft's default for the architecture",
    "lora_target_modules",
)
_add(
    SCRIPT,
    "mapped",
    "openai/gsm8k -> dataset=gsm8k (the local copy); a local GSM8K JSONL file or folder -> "
    "gsm8k:PATH; other Hub datasets refused (no downloads)",
    "dataset_name",
)
_add(SCRIPT, "mapped", "main (or unset) for GSM8K; other configs refused", "dataset_config")
_add(
    SCRIPT,
    "mapped",
    "train (the split shoestring trains on); others refused",
    "dataset_train_split",
)
_add(
    SCRIPT,
    "mapped",
    "rewards: TRL's registry names (accuracy_reward, think_format_reward, ...) -> trl:NAME, "
    "a dotted path pkg.mod.fn -> pkg.mod:fn",
    "reward_funcs",
)

# ----------------------------------------------------------------------------- unsupported
_add(
    GRPO,
    "unsupported",
    "only sum_then_normalize",
    "multi_objective_aggregation",
    accept=("sum_then_normalize",),
)
_add(GRPO, "unsupported", "two-sided clipping", "delta", accept=(None,))
_add(GRPO, "unsupported", "reference-model syncing (TR-DPO)", "sync_ref_model", accept=(False,))
_add(GRPO, "unsupported", "entropy-quantile token masking", "top_entropy_quantile", accept=(1.0, 1))
_add(GRPO, "unsupported", "an entropy bonus", "entropy_coef", accept=(0.0, 0))
_add(GRPO, "unsupported", "adaptive entropy control", "use_adaptive_entropy", accept=(False,))
_add(
    GRPO, "unsupported", "off-policy sequence masking", "off_policy_mask_threshold", accept=(None,)
)
_add(GRPO, "unsupported", "min-p sampling", "min_p", accept=(None, 0.0, 0))
_add(GRPO, "unsupported", "a repetition penalty in sampling", "repetition_penalty", accept=(1.0, 1))
_add(GRPO, "unsupported", "extra generate() arguments", "generation_kwargs", accept=(None, {}))
_add(GRPO, "unsupported", "chat-template arguments", "chat_template_kwargs", accept=(None, {}))
_add(GRPO, "unsupported", "an fp32 lm_head under bf16", "cast_lm_head_to_fp32", accept=(False,))
_add(GRPO, "unsupported", "not shuffling the prompts", "shuffle_dataset", accept=(True,))
_add(
    GRPO,
    "unsupported",
    "one generation batch per optimizer step (TRL's default, = gradient_accumulation_steps)",
    "steps_per_generation",
    "generation_batch_size",
    accept=(None,),
)
_add(
    GRPO,
    "unsupported",
    "the KL term is TRL's k3 without the importance-ratio correction (matters only with beta > 0)",
    "use_bias_correction_kl",
    accept=(False,),
    notice_only=True,
)
_add(
    TA,
    "unsupported",
    "AdamW only",
    "optim",
    accept=("adamw_torch", "adamw_torch_fused", "adamw_hf"),
)
_add(TA, "unsupported", "AdamW's eps is torch's 1e-8", "adam_epsilon", accept=(1e-8,))
_add(TA, "unsupported", "scheduler arguments", "lr_scheduler_kwargs", accept=(None, {}))
_add(TA, "unsupported", "optimizer arguments", "optim_args", "optim_target_modules", accept=(None,))
_add(
    TA,
    "unsupported",
    "the final model is the last step's",
    "load_best_model_at_end",
    accept=(False,),
)
_add(
    TA,
    "unsupported",
    "resume with --resume RUN_DIR",
    "resume_from_checkpoint",
    accept=(None, False),
)
_add(
    MODEL,
    "unsupported",
    "the Hub revision (load a local copy)",
    "model_revision",
    accept=("main", None),
)
_add(MODEL, "unsupported", "LoRA variants and extras", "use_rslora", "use_dora", accept=(False,))
_add(
    MODEL,
    "unsupported",
    "LoRA variants and extras",
    "lora_target_parameters",
    "lora_modules_to_save",
    accept=(None,),
)
_add(MODEL, "unsupported", "causal-LM LoRA only", "lora_task_type", accept=("CAUSAL_LM",))
_add(MODEL, "unsupported", "quantized loading", "load_in_8bit", "load_in_4bit", accept=(False,))
_add(
    SCRIPT,
    "unsupported",
    "reward models (use reward functions)",
    "reward_model_name_or_path",
    accept=(None,),
)
_add(MIXTURE, "unsupported", "dataset mixtures", "datasets", accept=(None, []))

# ----------------------------------------------------------------------------- ignored
_ENGINE = "sampling runs on shoestring's own batched KV-cache engine"
_add(
    GRPO,
    "ignored",
    _ENGINE,
    "use_vllm",
    "vllm_mode",
    "vllm_model_impl",
    "vllm_enable_sleep_mode",
    "vllm_structured_outputs_regex",
    "vllm_server_base_url",
    "vllm_server_host",
    "vllm_server_port",
    "vllm_server_timeout",
    "vllm_group_port",
    "vllm_gpu_memory_utilization",
    "vllm_max_model_length",
    "vllm_tensor_parallel_size",
    "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode",
    "vllm_importance_sampling_clip_max",
    "vllm_importance_sampling_clip_min",
    "vllm_importance_sampling_cap",
    "use_transformers_continuous_batching",
    "transformers_continuous_batching_config",
    "use_transformers_paged",
    "cache_implementation",
    "pad_to_multiple_of",
)
_add(LEGACY, "ignored", _ENGINE, "vllm_device", "vllm_dtype", "vllm_enable_prefix_caching")
_add(LEGACY, "ignored", _ENGINE, "vllm_guided_decoding_regex", "use_liger_loss")
_add(
    GRPO,
    "ignored",
    "only used with sync_ref_model (refused unless false)",
    "ref_model_mixup_alpha",
    "ref_model_sync_steps",
)
_add(
    GRPO,
    "ignored",
    "only used with use_adaptive_entropy (refused unless false)",
    "entropy_coef_min",
    "entropy_coef_max",
    "entropy_coef_delta",
    "entropy_target",
)
_add(GRPO, "ignored", "no tool calling", "max_tool_calling_iterations")
_add(GRPO, "ignored", "no MoE router loss", "router_aux_loss_coef")
_add(
    GRPO, "ignored", "shoestring loads the model itself (dtype via bf16/dtype)", "model_init_kwargs"
)
_add(GRPO, "ignored", "no DeepSpeed", "ds3_gather_for_generation")
_add(
    GRPO,
    "ignored",
    "no evaluation during training (held-out accuracy: eval_problems)",
    "num_generations_eval",
)
_add(
    GRPO,
    "ignored",
    "samples go to metrics.jsonl (log_completions_steps)",
    "log_unique_prompts",
    "log_multimodal",
    "log_completions_hub_repo",
)
_add(
    TA,
    "same",
    "same field: tensorboard (RUN/tensorboard), wandb (offline without network) or none; "
    "other trackers logged and dropped; metrics.jsonl is always written",
    "report_to",
)
_add(
    TA,
    "ignored",
    "a run is named by its directory (the W&B project: $WANDB_PROJECT, default shoestring)",
    "run_name",
    "project",
)
_add(
    TA,
    "ignored",
    "trackio is not written (report_to: tensorboard or wandb)",
    "trackio_space_id",
    "trackio_bucket_id",
    "trackio_static_space_id",
)
_add(
    TA,
    "ignored",
    "metrics go to metrics.jsonl, report.md and report_to's trackers",
    "logging_first_step",
    "log_on_each_node",
    "logging_nan_inf_filter",
    "include_num_input_tokens_seen",
    "log_level",
    "log_level_replica",
    "logging_strategy",
    "disable_tqdm",
    "skip_memory_metrics",
    "debug",
)
_add(LEGACY, "ignored", "TensorBoard files go to RUN/tensorboard (report_to)", "logging_dir")
_add(
    TA,
    "ignored",
    "no evaluation during training (held-out accuracy: eval_problems)",
    "eval_strategy",
    "eval_steps",
    "eval_delay",
    "per_device_eval_batch_size",
    "prediction_loss_only",
    "eval_on_start",
    "eval_do_concat_batches",
    "eval_use_gather_object",
    "eval_accumulation_steps",
    "include_for_metrics",
    "batch_eval_metrics",
    "bf16_full_eval",
    "fp16_full_eval",
    "metric_for_best_model",
    "greater_is_better",
    "do_train",
    "do_eval",
    "do_predict",
)
_add(
    LEGACY,
    "ignored",
    "no evaluation during training (held-out accuracy: eval_problems)",
    "evaluation_strategy",
)
_add(
    TA,
    "ignored",
    "no uploads: the run directory holds the model",
    "push_to_hub",
    "hub_token",
    "hub_private_repo",
    "hub_model_id",
    "hub_strategy",
    "hub_always_push",
    "hub_revision",
)
_add(
    TA,
    "ignored",
    "one process on one device",
    "average_tokens_across_devices",
    "accelerator_config",
    "parallelism_config",
    "ddp_find_unused_parameters",
    "ddp_bucket_cap_mb",
    "ddp_broadcast_buffers",
    "ddp_static_graph",
    "ddp_backend",
    "ddp_timeout",
    "fsdp",
    "fsdp_config",
    "deepspeed",
    "local_rank",
    "save_on_each_node",
)
_add(SCRIPT, "ignored", "one process on one device", "ignore_bias_buffers")
_add(
    TA,
    "ignored",
    "prompts are in memory; no dataloader",
    "dataloader_drop_last",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context",
    "dataloader_in_order",
    "remove_unused_columns",
    "label_names",
    "train_sampling_strategy",
    "length_column_name",
    "ignore_data_skip",
    "data_seed",
    "auto_find_batch_size",
)
_add(
    TA,
    "ignored",
    "speed settings of TRL's trainer; shoestring has its own kernels and engine",
    "tf32",
    "torch_compile",
    "torch_compile_backend",
    "torch_compile_mode",
    "use_liger_kernel",
    "liger_kernel_config",
    "use_cache",
    "torch_empty_cache_steps",
    "full_determinism",
    "gradient_checkpointing_kwargs",
    "activation_checkpointing_kwargs",
)
_add(
    TA,
    "ignored",
    "not used by GRPO (TRL's GRPO trainer ignores it too)",
    "label_smoothing_factor",
    "neftune_noise_alpha",
)
_add(
    TA,
    "ignored",
    "checkpoints always hold the optimizer so a run resumes exactly",
    "save_only_model",
    "enable_jit_checkpoint",
    "restore_callback_states_from_checkpoint",
)
_add(
    LEGACY,
    "ignored",
    "nothing is overwritten: a non-empty output_dir is refused (resume it or name another)",
    "overwrite_output_dir",
)
_add(LEGACY, "ignored", "device from use_cpu or device", "use_mps_device")
_add(
    MODEL,
    "ignored",
    "shoestring's models use SDPA; HF models load with their default",
    "attn_implementation",
)
_add(
    MODEL,
    "ignored",
    "only with load_in_4bit (refused)",
    "bnb_4bit_quant_type",
    "use_bnb_nested_quant",
    "bnb_4bit_quant_storage",
)
_add(
    SCRIPT,
    "ignored",
    "held-out problems: eval_dataset (default: the test split)",
    "dataset_test_split",
)
_add(SCRIPT, "ignored", "the dataset is read whole", "dataset_streaming")
_add(MIXTURE, "ignored", "no dataset mixtures", "streaming", "test_split_size")

#: TRL's defaults where they differ from shoestring's, for keys honoured here. A TRL config
#: (detected or ``--trl-config``) gets these for the keys it does not set, so it means what it
#: means in TRL; a shoestring config keeps shoestring's defaults (docs/grpo.md says why each).
TRL_DEFAULTS: dict[str, Any] = {
    "max_prompt_length": None,  # TRL 1.x has no such key: prompts are never cut
    "max_completion_length": 512,
    "disable_dropout": False,
    "gradient_checkpointing": True,
    "logging_steps": 10,
    "save_steps": 500,
    "log_completions": False,
}
#: TRL's defaults a TRL config does not get, and why; the log names each one it leaves unset.
TRL_DEFAULTS_NOT_APPLIED: dict[str, str] = {
    "output_dir": "TRL: trainer_output; here runs/grpo-<time>, so runs never share a directory",
    "save_total_limit": "TRL: keep every checkpoint; here the newest 2, as a checkpoint holds "
    "the whole model",
    "num_completions_to_print": "TRL: all; here 4 per samples record",
}
#: ModelConfig's LoRA defaults, applied when ``use_peft`` is true and the key is unset.
TRL_LORA_DEFAULTS: dict[str, Any] = {
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": None,
}
