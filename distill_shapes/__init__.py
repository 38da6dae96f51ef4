"""The OpenAI wire shapes that the plugin and the embedded server both read and write.

A leaf: it imports neither ``pytest_distill`` nor ``distill_server`` (``lint-imports`` checks
it), so each side parses and checks a shape with the same code. One module per shape:

- ``training``: the chat fine-tuning file (its lines, OpenAI's rules, the examples they let
  through).
- ``tools``: function tool definitions, ``tool_choice``, assistant tool calls and
  ``response_format``, with JSON Schema checked by ``jsonschema``.

Preference (DPO) lines, grader JSON and batch lines belong here too, each in a
module of its own, when the plugin and the server come to share them.
"""
