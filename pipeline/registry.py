"""Every source and output type logferry knows: the one place a new component is registered.

A component lives in its own folder with a ``config.py`` (its frozen settings model, with a
``type`` literal) and the module that runs it. Registering it means adding its config class
to the union below and its runtime class to the table beside it; :mod:`pipeline.config`
and :mod:`pipeline.runtime.topology` take both from here, and neither imports a component.

Runtime classes are named as ``"module:Class"`` strings and imported only when a config
uses them, so ``logferry check`` never pays for a client library it does not need.
Each is built as ``Class(name, config, context)`` for sources and ``Class(config, context)``
for outputs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.outputs.elasticsearch.config import ElasticsearchOutputConfig
from pipeline.outputs.file.config import FileOutputConfig
from pipeline.outputs.kafka.config import KafkaOutputConfig
from pipeline.outputs.s3.config import S3OutputConfig
from pipeline.sources.kafka.config import KafkaSourceConfig
from pipeline.sources.tail.config import TailSourceConfig

SourceConfig = Annotated[TailSourceConfig | KafkaSourceConfig, Field(discriminator="type")]
SOURCE_CLASSES = {
    "tail": "pipeline.sources.tail.source:TailSource",
    "kafka": "pipeline.sources.kafka.source:KafkaSource",
}

OutputConfig = Annotated[
    FileOutputConfig | ElasticsearchOutputConfig | S3OutputConfig | KafkaOutputConfig, Field(discriminator="type")
]
OUTPUT_CLASSES = {
    "file": "pipeline.outputs.file.output:FileOutput",
    "elasticsearch": "pipeline.outputs.elasticsearch.output:ElasticsearchOutput",
    "s3": "pipeline.outputs.s3.output:S3Output",
    "kafka": "pipeline.outputs.kafka.output:KafkaOutput",
}

#: Every ``type`` value a source or output table may have.
COMPONENT_TYPES = frozenset(SOURCE_CLASSES) | frozenset(OUTPUT_CLASSES)
