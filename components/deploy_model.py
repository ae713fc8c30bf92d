from kfp import dsl
from kfp.dsl import Output

from components.images import PIPELINE_IMAGE
from petqlora.cloud.vertex_artifacts import VertexEndpoint


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def deploy_model(
    model_version: str,
    model_name: str,
    deploy: dict,
    project: str,
    region: str,
    run_id: str,
    endpoint: Output[VertexEndpoint],
) -> str:
    """Deploy model: serve the version just registered on the model's Vertex AI endpoint (named `model_name`,
    created when missing) on the machine the `deploy` parameter names; it takes 100% of the traffic and the
    earlier versions there are undeployed. A retried step finds the endpoint and the version already there.
    The output links to the endpoint (google.VertexEndpoint). With deploy={} nothing is deployed ("off")."""
    import os

    from petqlora.cloud.vertex_endpoints import deploy_registered
    from petqlora.logs import setup_logging

    setup_logging(os.environ)
    return deploy_registered(model_version, deploy, project=project, region=region, run_id=run_id,
                             model_name=model_name, endpoint_artifact=endpoint)
