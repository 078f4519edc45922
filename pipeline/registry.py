"""Every source, transform and output type logferry knows: the one place a new component is registered.

A component lives in its own folder with a ``config.py`` (its frozen settings model, with a
``type`` literal) and the module that runs it. Registering it means adding its config class
to the union below and its runtime class to the table beside it; :mod:`pipeline.config`
and :mod:`pipeline.runtime.topology` take both from here, and neither imports a component.

Runtime classes are named as ``"module:Class"`` strings and imported only when a config
uses them, so ``logferry check`` never pays for a client library it does not need.
Each is built as ``Class(name, config, context)`` for sources, ``Class(config, context)``
for outputs and ``Class(name, config)`` for transforms.

A component that ``logferry check --connect`` can ask about its server without running it
registers a probe too, ``"module:function"``: ``await probe(name, config)`` returns what it
found, or raises a :class:`pipeline.errors.LogferryError` naming the problem and the key.
(Outputs without one are asked through their ``describe_server()``, if they have it.)
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.outputs.elasticsearch.config import ElasticsearchOutputConfig
from pipeline.outputs.file.config import FileOutputConfig
from pipeline.outputs.kafka.config import KafkaOutputConfig
from pipeline.outputs.opensearch.config import OpenSearchOutputConfig
from pipeline.outputs.s3.config import S3OutputConfig
from pipeline.sources.forward.config import ForwardSourceConfig
from pipeline.sources.kafka.config import KafkaSourceConfig
from pipeline.sources.tail.config import TailSourceConfig
from pipeline.transforms.cost.config import CostTransformConfig
from pipeline.transforms.redact.config import RedactTransformConfig

SourceConfig = Annotated[TailSourceConfig | ForwardSourceConfig | KafkaSourceConfig, Field(discriminator="type")]
SOURCE_CLASSES = {
    "tail": "pipeline.sources.tail.source:TailSource",
    "forward": "pipeline.sources.forward.source:ForwardSource",
    "kafka": "pipeline.sources.kafka.source:KafkaSource",
}

#: The module of a source type that keeps commit points of its own in its journals (see
#: :class:`pipeline.sources.base.CommitJournal`). At every start, whether or not a source of the type
#: is configured now, ``committed_seq(state_dir) -> int`` gives the highest commit sequence number its
#: journals hold the commit point of, and once the start's is known, ``cut_void(state_dir, seq)`` cuts
#: the entries of commits above it out of them.
SOURCE_COMMIT_POINTS = {
    "forward": "pipeline.sources.forward.chunks",
}

SOURCE_PROBES = {
    "kafka": "pipeline.sources.kafka.probe:probe",
}

OutputConfig = Annotated[
    FileOutputConfig | ElasticsearchOutputConfig | OpenSearchOutputConfig | S3OutputConfig | KafkaOutputConfig,
    Field(discriminator="type"),
]
OUTPUT_CLASSES = {
    "file": "pipeline.outputs.file.output:FileOutput",
    "elasticsearch": "pipeline.outputs.elasticsearch.output:ElasticsearchOutput",
    "opensearch": "pipeline.outputs.opensearch.output:OpenSearchOutput",
    "s3": "pipeline.outputs.s3.output:S3Output",
    "kafka": "pipeline.outputs.kafka.output:KafkaOutput",
}

OUTPUT_PROBES = {
    "kafka": "pipeline.outputs.kafka.probe:probe",
}

TransformConfig = Annotated[RedactTransformConfig | CostTransformConfig, Field(discriminator="type")]
TRANSFORM_CLASSES = {
    "redact": "pipeline.transforms.redact.transform:RedactTransform",
    "cost": "pipeline.transforms.cost.transform:CostTransform",
}

#: Every ``type`` value a source, transform or output table may have.
COMPONENT_TYPES = frozenset(SOURCE_CLASSES) | frozenset(OUTPUT_CLASSES) | frozenset(TRANSFORM_CLASSES)
