"""The OpenAI wire shapes that the plugin and the embedded server both read and write.

A leaf: it imports neither ``pytest_distill`` nor ``distill_server`` (``lint-imports`` checks
it), so each side parses and checks a shape with the same code. One module per shape:

- ``training``: the chat fine-tuning file (its lines, OpenAI's rules, the examples they let
  through).
- ``tools``: function tool definitions, ``tool_choice``, assistant tool calls and
  ``response_format``, with JSON Schema checked by ``jsonschema``.
- ``batch``: the Batch API's files: input lines (requests), output lines (results), the API's
  limits and the splitting of requests into files within them.

Preference (DPO) lines and grader JSON belong here too, each in a module of its own, when the
plugin and the server come to share them.
"""
