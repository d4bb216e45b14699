"""Interactive web demo over both apps (``launch/web_demo.py``).

Like ``launch/``, this package sits above ``pure`` and ``varsr`` (it imports both; neither imports it):
``config`` is the schema, ``host`` keeps one model in memory and runs one restoration at a time, and
``ui`` lays out the Gradio page.
"""
