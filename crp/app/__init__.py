"""The application: command line, demo, analysis, concept and HTML reports, output folder, and the
embedded shapes dataset and model."""
