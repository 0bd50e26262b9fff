import gc

from sqlalchemy.orm import configure_mappers

from crm import create_app

app = create_app()

# What is loaded by now (modules, the app, every mapper) lives as long as the process.
# Frozen, the collector's full passes skip it: each walked some 170,000 objects, about
# 90 ms on a 2-core machine, which stalled a request (and those queued behind it) several
# times a minute under load. Forked job processes also share these pages untouched.
configure_mappers()
gc.freeze()
