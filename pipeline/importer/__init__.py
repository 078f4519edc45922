"""``logferry import``: a td-agent / Fluentd configuration turned into logferry's, and the cut-over.

Modules, in the order an import runs them:

* :mod:`~pipeline.importer.fluentd_conf`: Fluentd's syntax (v1 and v0.12, ``@include`` with
  globs) into a tree of directives that remember their file and lines.
* :mod:`~pipeline.importer.translate`: the walk; :mod:`~pipeline.importer.sources`,
  :mod:`~pipeline.importer.outputs`, :mod:`~pipeline.importer.filters` and
  :mod:`~pipeline.importer.buffer` hold one handler per Fluentd type (adding a type is one
  table entry); :mod:`~pipeline.importer.routing` reproduces Fluentd's first-match routing.
* :mod:`~pipeline.importer.toml_writer`: TOML with a comment above each table.
* :mod:`~pipeline.importer.positions`: td-agent pos_files and Fluent Bit's tail database
  seeding ``positions.json``, checked against each file's inode.
* :mod:`~pipeline.importer.report`: what was translated, approximated or refused, and why.
* :mod:`~pipeline.importer.command`: the command itself.
"""
