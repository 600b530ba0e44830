"""The config: the run's schema (schema), loading YAML with overrides (loading), and the reward model's schema
(reward_model). Everything is importable from here: `from rest.config import RunConfig, load_config`.
"""

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
    HOW_TO_TRAIN,
    REWARD_COMPONENTS,
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
    check_reward_names,
)

__all__ = ['REWARD_COMPONENTS', 'check_reward_names', 'Section', 'DataConfig', 'DEVICE_PATTERN', 'ModelConfig', 'OptimFields', 'LoraConfig', 'HOW_TO_TRAIN', 'PolicyOptimFields', 'BCConfig', 'VllmConfig', 'GrowConfig', 'RuleConfig', 'RewardConfig', 'PreferenceConfig', 'ImproveConfig', 'EvalConfig', 'DaskConfig', 'OrchestrationConfig', 'TrackingConfig', 'RunConfig', 'ConfigOverrides', 'overrides_dict', 'apply_overrides', 'config_from_dict', 'load_config', 'dump_config', 'RMDataConfig', 'RMModelConfig', 'RMTrainConfig', 'RewardModelConfig']
