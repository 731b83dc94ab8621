"""The application: command line, demo, analysis, concept and HTML reports, output folder, shapes data and model.

It uses the library through its public faces (``crp.attribution``, ``crp.visualization``, ...); the library
never imports it.
"""
