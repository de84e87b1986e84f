"""hutch's own connection to a running queue server: the RE Manager's 0MQ control socket."""

from __future__ import annotations

from bluesky_queueserver_api.zmq import REManagerAPI

from hutch.queue.services import QueueState

__all__ = ["manager_api"]


def manager_api(state: QueueState) -> REManagerAPI:
    """A bluesky-queueserver-api client of the stack's RE Manager, acting as the profile's
    default group (``[queue] default_group``); raises on a refused request."""
    api = REManagerAPI(zmq_control_addr=state.zmq_control, zmq_info_addr=state.zmq_info)
    api.user = "hutch"
    api.user_group = state.default_group
    return api
