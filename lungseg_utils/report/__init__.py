"""The report: numbers read from a run's result files, formatted, typeset into report.pdf.

Imports the core and the studies' result schemas, never the other way. Imports only go down
this list:

``formatting``         numbers as printed: fixed decimals by kind of value, minus, n/a
``schema``             what evaluation.json and tta.json must hold, checked as they are read
``conditions``         how a claim is declared; the tests on printed numbers claims share
``claims_methods``     the claims on how the run was scored and trained
``claims_results``     the claims on what it measured: versus the classical pipeline, TTA ...
``claims_studies``     the claims on the optional studies: robustness, seeds, ensemble size
``claims_discussion``  the claims of the discussion (the field) and the conclusion
``claims``             all the claims; the sentence chosen for each key; the check
``figures``            the figures the report shows, and their exported size and text
``values_studies``     the ensemble's and the optional studies' numbers, as printed
``values``             what the report and README print, read from a run's result files
``build``              report/report.pdf and the README's results block (``lungseg report``)
"""
