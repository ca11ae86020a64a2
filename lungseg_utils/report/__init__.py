"""The report: numbers read from a run's result files, formatted, typeset into report.pdf.

Imports the core and the studies' result schemas, never the other way. Imports only go down
this list:

``formatting``  numbers as printed: fixed decimals by kind of value, minus, n/a
``values``      what the report and README print, read from a run's result files
``claims``      the sentences that depend on results, each checked against a run's numbers
``build``       report/report.pdf and the README's results block (``lungseg report``)
"""
