"""Checkpoints: loading every supported format safely (`load`, `formats`), and the identity a result records of
the checkpoint it was computed from (`identity`). Callers use the names below (`checkpoints.load_state`)."""
from ._formats import (
    CHECKPOINT_SUFFIXES,
    ORDERED_FORMATS,
    SHARD_INDEX,
    ZIP_MAGIC,
    LazyState,
    checkpoint_format,
    shapes_of,
)
from ._identity import (
    HASH,
    checkpoint_identity,
    identity_change,
    recorded_condition,
    run_condition,
    snapshot_metadata,
    tensors_digest,
)
from ._load import (
                      STATE_DICT_KEYS,
                      Checkpoint,
                      ModelConfig,
                      check_metadata,
                      check_state,
                      clean_keys,
                      epoch_from_filename_or_raise,
                      find_snapshots,
                      listed,
                      load_model_weights,
                      load_state,
                      load_state_dict_file,
                      load_weights,
                      match_prefix,
                      newest_snapshot,
                      pickled_object_class,
                      read_checkpoint,
                      recorded_normalization,
                      snapshot_config,
                      snapshot_epoch,
                      snapshot_epoch_or_none,
                      split_state_dict,
                      state_dict_of,
                      torch_load,
)

__all__ = [
    "CHECKPOINT_SUFFIXES", "SHARD_INDEX", "ZIP_MAGIC", "LazyState", "checkpoint_format", "shapes_of",
    "HASH", "checkpoint_identity", "identity_change", "tensors_digest", "recorded_condition", "run_condition",
    "snapshot_metadata",
    "STATE_DICT_KEYS", "Checkpoint", "ModelConfig", "check_metadata", "check_state", "clean_keys",
    "epoch_from_filename_or_raise", "find_snapshots", "listed", "load_model_weights", "load_state",
    "load_state_dict_file", "load_weights", "match_prefix", "newest_snapshot", "pickled_object_class",
    "read_checkpoint", "recorded_normalization", "snapshot_config", "snapshot_epoch",
    "snapshot_epoch_or_none", "split_state_dict", "state_dict_of", "torch_load", "ORDERED_FORMATS",
]
