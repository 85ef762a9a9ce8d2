"""Builders and fixtures the tests import (``from helpers.llava_fixtures import ...``)."""
