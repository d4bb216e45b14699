"""Sharded checkpoints with ``torch.distributed.checkpoint`` (DCP) that never run pickled code.

Each rank writes only the shards it owns into one file per rank (``__<rank>_0.distcp``); the
coordinator writes a ``.metadata`` index. Loading reshards to whatever the current model looks
like (FSDP2 on N ranks, DDP, one process), so a run can resume on another world size.

Two places in DCP (torch 2.14) unpickle with plain pickle semantics:

- ``FileSystemReader.read_metadata`` calls ``pickle.load`` on ``.metadata``;
- ``DefaultLoadPlanner.load_bytes`` calls ``torch.load(weights_only=False)`` on non-tensor entries.

:class:`SafeFileSystemReader` reads ``.metadata`` with an unpickler that resolves only DCP's own
metadata classes, torch dtypes/sizes and paths (the globals a real ``.metadata`` holds), and
:class:`SafeLoadPlanner` loads non-tensor entries with ``weights_only=True``. A planted file
therefore fails with ``UnpicklingError`` instead of running.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

_META_MODULE = "torch.distributed.checkpoint.metadata"
_ALLOWED = (
    {
        (_META_MODULE, n)
        for n in (
            "Metadata",
            "MetadataIndex",
            "ChunkStorageMetadata",
            "TensorProperties",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        )
    }
    | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # maps a layout name to torch.strided etc.; no side effects
        ("collections", "OrderedDict"),
    }
    | {
        (m, n)
        for m in ("pathlib", "pathlib._local")
        for n in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")
    }
)


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in DCP metadata (not a DCP metadata class)")


def read_metadata(directory) -> Metadata:
    """The ``.metadata`` index of a DCP checkpoint, read without executing pickled code."""
    path = Path(directory) / ".metadata"
    with open(path, "rb") as f:
        md = _MetadataUnpickler(f).load()
    if not isinstance(md, Metadata):
        raise pickle.UnpicklingError(f"{path}: not DCP metadata ({type(md).__name__})")
    return md


class SafeFileSystemReader(FileSystemReader):
    """FileSystemReader whose metadata unpickling is restricted to DCP's own classes."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        rank = kwargs.get("rank")
        if rank is not None:  # per-rank metadata is only written with use_collectives=False, which we never use
            raise ValueError("per-rank DCP metadata is not supported")
        md = read_metadata(self.path)
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner that loads non-tensor entries with ``weights_only=True``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, map_location="cpu", weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def save_sharded(state: dict, directory, process_group=None, async_save: bool = False):
    """Write ``state`` (DTensor shards / plain tensors / small Python values) under ``directory``.

    Collective over ``process_group``. Returns a future when ``async_save`` (the state is staged to
    CPU before this returns, so training may continue), else None.
    """
    writer = FileSystemWriter(str(directory), single_file_per_rank=True, sync_files=True)
    kw = dict(storage_writer=writer, process_group=process_group, no_dist=not _distributed())
    if async_save:
        return dcp.async_save(state, **kw)
    dcp.save(state, **kw)
    return None


def load_sharded(state: dict, directory, process_group=None, partial: bool = False) -> dict:
    """Fill ``state`` in place from ``directory`` (each rank reads the slices its tensors cover).

    ``partial=True`` loads only the keys ``state`` names (e.g. the model without the optimizer).
    """
    dcp.load(
        state,
        storage_reader=SafeFileSystemReader(str(directory)),
        planner=SafeLoadPlanner(allow_partial_load=partial),
        process_group=process_group,
        no_dist=not _distributed(),
    )
    return state


def verify_sharded(directory) -> None:
    """Raise ValueError naming the bad file when ``.metadata`` is unreadable/unsafe or a shard is short."""
    directory = Path(directory)
    try:
        md = read_metadata(directory)
    except FileNotFoundError:
        raise ValueError(f"{directory / '.metadata'}: missing") from None
    except Exception as e:  # truncated, corrupt or planted
        raise ValueError(f"{directory / '.metadata'}: unreadable ({type(e).__name__}: {e})") from None
    need: dict[str, int] = {}
    for info in (md.storage_data or {}).values():
        rel = str(info.relative_path)
        need[rel] = max(need.get(rel, 0), int(info.offset) + int(info.length))
    for rel, size in sorted(need.items()):
        f = directory / rel
        have = f.stat().st_size if f.is_file() else -1
        if have < size:
            raise ValueError(f"{f}: {'missing' if have < 0 else f'truncated ({have} of {size} bytes)'}")


def shard_files(directory) -> list[Path]:
    return sorted(Path(directory).glob("*.distcp"))
