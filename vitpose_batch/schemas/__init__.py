"""Data contracts of vitpose-batch: the prediction rows (Arrow) and their COCO forms."""

from .predictions import PERSON_TYPE, PREDICTION_SCHEMA, make_table, person_arrays, persons_from_result

__all__ = ["PERSON_TYPE", "PREDICTION_SCHEMA", "make_table", "person_arrays", "persons_from_result"]
