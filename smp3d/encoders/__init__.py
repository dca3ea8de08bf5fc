"""The encoder protocol, the registry and weight handling. No encoder family lives here."""

from .adapt import adapt_input_channels, adapt_input_weight
from .dilation import dilate_encoder, dilate_module, dilation_schedule
from .hub import PretrainedWeightsUnavailableError, hub_repo_id
from .inflate import INFLATION_MODES, inflate_kernel, inflate_state_dict
from .preprocessing import get_preprocessing_fn, get_preprocessing_params, preprocess_input
from .protocol import (
    Encoder,
    EncoderProtocol,
    check_depth,
    cumulative_reductions,
    resolve_strides,
    validate_encoder,
)
from .registry import (
    ENCODER_GROUP,
    RESOLVER_GROUP,
    EncoderNameConflictError,
    EncoderPluginError,
    EncoderPluginWarning,
    EncoderRegistry,
    UnknownEncoderError,
    get_encoder,
    get_encoder_spec,
    list_encoder_resolvers,
    list_encoders,
    register_encoder,
    register_encoder_resolver,
    unregister_encoder,
    unregister_encoder_resolver,
)
from .spec import EncoderSpec, WeightSource
from .weights import load_state_dict_strict

__all__ = [
    "PretrainedWeightsUnavailableError",
    "hub_repo_id",
    "ENCODER_GROUP",
    "INFLATION_MODES",
    "RESOLVER_GROUP",
    "Encoder",
    "EncoderNameConflictError",
    "EncoderPluginError",
    "EncoderPluginWarning",
    "EncoderProtocol",
    "EncoderRegistry",
    "EncoderSpec",
    "UnknownEncoderError",
    "WeightSource",
    "adapt_input_channels",
    "adapt_input_weight",
    "check_depth",
    "cumulative_reductions",
    "dilate_encoder",
    "dilate_module",
    "dilation_schedule",
    "get_encoder",
    "get_encoder_spec",
    "get_preprocessing_fn",
    "get_preprocessing_params",
    "inflate_kernel",
    "inflate_state_dict",
    "list_encoder_resolvers",
    "list_encoders",
    "preprocess_input",
    "load_state_dict_strict",
    "register_encoder",
    "register_encoder_resolver",
    "resolve_strides",
    "unregister_encoder",
    "unregister_encoder_resolver",
    "validate_encoder",
]
