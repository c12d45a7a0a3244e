"""Built-in datasets and DataModules, all following :mod:`debugger.contract`; nothing is downloaded."""

from recipes.data.base import ChunkedDataset, ContractDataModule
from recipes.data.digits import DigitsDataModule, DigitsDataset
from recipes.data.fashion import FashionMNISTDataModule, FashionMNISTDataset, load_fashion_mnist, read_idx
from recipes.data.folder import ImageFolderDataModule, ImageFolderDataset
from recipes.data.planted import (
    DEFAULT_PREVALENCE,
    PlantedConceptsDataModule,
    PlantedConceptsDataset,
    plant_concepts,
    prevalence_table,
)
from recipes.data.roads import RoadScenesDataModule, RoadScenesDataset

__all__ = [
    "DEFAULT_PREVALENCE",
    "ChunkedDataset",
    "ContractDataModule",
    "DigitsDataModule",
    "DigitsDataset",
    "FashionMNISTDataModule",
    "FashionMNISTDataset",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "PlantedConceptsDataModule",
    "PlantedConceptsDataset",
    "RoadScenesDataModule",
    "RoadScenesDataset",
    "load_fashion_mnist",
    "plant_concepts",
    "prevalence_table",
    "read_idx",
]
