# Cython declarations for reference.py (used only by `make fast`): the machine a run
# builds, drives and observes is typed, so that its loop, its command index and its
# records are C struct slots, and each loop step between commands a C call.

from reference.machine cimport Machine
