"""The probe loop: batches -> model -> hooks -> rows -> accumulators.

:mod:`.stream` holds ``spectrum()``; :mod:`.lidar` holds ``lidar()``; :mod:`.capture` the hooks
and pooling; :mod:`.batches` how a batch becomes the model's arguments.
"""
