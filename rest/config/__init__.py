"""The config: the run's schema (schema), loading YAML with overrides (loading), and the reward model's schema
(reward_model). Everything is importable from here: `from rest.config import RunConfig, load_config`.
"""

from rest.config.components import REWARD_COMPONENTS, ComponentSpec, check_reward_names
from rest.config.loading import (
    ConfigOverrides,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    overrides_dict,
)
from rest.config.reward_model import (
    RewardModelConfig,
    RMDataConfig,
    RMModelConfig,
    RMTrainConfig,
)
from rest.config.schema import (
    DEVICE_PATTERN,
    IN_NO_KEY,
    BCConfig,
    DaskConfig,
    DataConfig,
    EvalConfig,
    GrowConfig,
    ImproveConfig,
    LoraConfig,
    ModelConfig,
    OptimFields,
    OrchestrationConfig,
    PolicyOptimFields,
    PreferenceConfig,
    RewardConfig,
    RuleConfig,
    RunConfig,
    Section,
    TrackingConfig,
    VllmConfig,
    in_key,
    unkeyed_keys,
)

__all__ = ['REWARD_COMPONENTS', 'ComponentSpec', 'check_reward_names', 'Section', 'DataConfig', 'DEVICE_PATTERN', 'ModelConfig', 'OptimFields', 'LoraConfig', 'IN_NO_KEY', 'in_key', 'unkeyed_keys', 'PolicyOptimFields', 'BCConfig', 'VllmConfig', 'GrowConfig', 'RuleConfig', 'RewardConfig', 'PreferenceConfig', 'ImproveConfig', 'EvalConfig', 'DaskConfig', 'OrchestrationConfig', 'TrackingConfig', 'RunConfig', 'ConfigOverrides', 'overrides_dict', 'apply_overrides', 'config_from_dict', 'load_config', 'dump_config', 'RMDataConfig', 'RMModelConfig', 'RMTrainConfig', 'RewardModelConfig']
