"""The application shell: the main job (:mod:`~ssjax.app.pipeline`) and the command line
(:mod:`~ssjax.app.cli`). The only place that prints.
"""
