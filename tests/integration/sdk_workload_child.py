"""Run by the Azure IoT device SDK's own interpreter, with the IOTEDGE_* environment a module gets.

Waits for a line on stdin (so that the test can register this pid as the module's first), then
does what unmodified module code does: `IoTHubModuleClient.create_from_edge_environment()`,
which fetches the trust bundle and has its first SAS token signed over the workload socket. Then
asks the same edge HSM client the SDK used to sign argv[1]. Prints one JSON line: this pid, the
SDK's token and trust bundle, and the signature, or the error the SDK raised. Connects nowhere.
"""

import json
import os
import sys
import traceback

from azure.iot.device import IoTHubModuleClient
from azure.iot.device.iothub.edge_hsm import IoTEdgeHsm


def main() -> int:
    sys.stdin.readline()
    out = {"pid": os.getpid()}
    try:
        client = IoTHubModuleClient.create_from_edge_environment(connection_retry=False)
        config = client._mqtt_pipeline.pipeline_configuration
        out["token"] = str(config.sastoken)
        out["certificate"] = config.server_verification_cert
        hsm = IoTEdgeHsm(module_id=os.environ["IOTEDGE_MODULEID"],
                         generation_id=os.environ["IOTEDGE_MODULEGENERATIONID"],
                         workload_uri=os.environ["IOTEDGE_WORKLOADURI"],
                         api_version=os.environ["IOTEDGE_APIVERSION"])
        out["signed"] = hsm.sign(sys.argv[1])
        out["hsm_certificate"] = hsm.get_certificate()
        client.shutdown()
    except Exception as exc:  # the test reads what the SDK raised, causes included
        out["error"] = "".join(traceback.format_exception(exc))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
