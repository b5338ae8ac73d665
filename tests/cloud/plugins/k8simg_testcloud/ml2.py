"""An ML2 mechanism driver that binds every port to the first segment offered.

The test cloud runs neutron-server with no L2 agent: without a driver that binds, Nova's
port binding fails and no server ever goes ACTIVE. Binding here goes through ML2's real
binding machinery (segments, binding levels, port status), only the agent is missing.
"""

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class BindAllMechanismDriver(api.MechanismDriver):
    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def initialize(self):
        pass

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], portbindings.VIF_TYPE_OTHER,
                                {portbindings.CAP_PORT_FILTER: False},
                                status=constants.PORT_STATUS_ACTIVE)
            return
