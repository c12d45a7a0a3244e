"""The analysis engine: capture, patches, concepts, confusion, saliency, reports. Never imports Lightning."""

from debugger.contract import Batch, Sample, as_sample, repack_batch, unpack_batch

__all__ = ["Batch", "Sample", "as_sample", "repack_batch", "unpack_batch"]
