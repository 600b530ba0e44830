"""The config: the run's schema (one module per section, composed in schema.py), the kinds of reward component
(components), loading YAML with overrides (loading), and the reward model's schema (reward_model). Everything is
importable from here: `from rest.config import RunConfig, load_config`.
"""

from rest.config.base import (
    DEVICE_PATTERN,
    IN_KEY_WHEN_SET,
    IN_NO_KEY,
    Section,
    in_key,
    in_key_when_set,
    in_key_when_set_by,
    unkeyed_keys,
)
from rest.config.components import (
    REWARD_COMPONENTS,
    ComponentSpec,
    check_reward_names,
    column_of,
    is_function_reference,
    is_verifier,
    kind_of,
    spec_of,
)
from rest.config.data import DataConfig
from rest.config.evaluation import EvalConfig
from rest.config.grow import GrowConfig, VllmConfig
from rest.config.improve import ImproveConfig, PreferenceConfig
from rest.config.loading import (
    ConfigOverrides,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    overrides_dict,
)
from rest.config.model import ModelConfig
from rest.config.orchestration import DaskConfig, OrchestrationConfig, TrackingConfig
from rest.config.reward import RewardConfig, RuleConfig
from rest.config.reward_model import (
    RewardModelConfig,
    RMDataConfig,
    RMModelConfig,
    RMTrainConfig,
)
from rest.config.schema import RunConfig
from rest.config.training import BCConfig, LoraConfig, OptimFields, PolicyOptimFields

__all__ = [
    "REWARD_COMPONENTS",
    "ComponentSpec",
    "check_reward_names",
    "column_of",
    "is_function_reference",
    "is_verifier",
    "kind_of",
    "spec_of",
    "Section",
    "DataConfig",
    "DEVICE_PATTERN",
    "ModelConfig",
    "OptimFields",
    "LoraConfig",
    "IN_NO_KEY",
    "IN_KEY_WHEN_SET",
    "in_key",
    "in_key_when_set",
    "in_key_when_set_by",
    "unkeyed_keys",
    "PolicyOptimFields",
    "BCConfig",
    "VllmConfig",
    "GrowConfig",
    "RuleConfig",
    "RewardConfig",
    "PreferenceConfig",
    "ImproveConfig",
    "EvalConfig",
    "DaskConfig",
    "OrchestrationConfig",
    "TrackingConfig",
    "RunConfig",
    "ConfigOverrides",
    "overrides_dict",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "dump_config",
    "RMDataConfig",
    "RMModelConfig",
    "RMTrainConfig",
    "RewardModelConfig",
]
