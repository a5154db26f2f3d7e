"""Data sources, splits and loaders."""

from finequant.data.base import LabeledData, Splits, align_classes, load_splits, stratified_split
from finequant.data.inspect import inspect_data
from finequant.data.loaders import make_loader
from finequant.data.sources import DATA_SOURCES, load_data

__all__ = ["DATA_SOURCES", "LabeledData", "Splits", "align_classes", "inspect_data", "load_data", "load_splits",
           "make_loader", "stratified_split"]
