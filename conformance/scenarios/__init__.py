"""The conformance scenarios, one module per area of the contract.

Importing this package registers every scenario in
``conformance._scenario.SCENARIOS`` in a stable order.
"""

from conformance.scenarios import (  # noqa: F401 - imported for registration
    bad_input,
    capability_gaps,
    dead_letter,
    groups,
    lifecycle,
    pubsub,
    redelivery,
    rpc,
    scheduling,
)
