"""The classifier server: the registered adapter on its base model behind Vertex AI's custom-container
contract (AIP_HTTP_PORT, AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE, AIP_STORAGE_URI), answering with the same
class scorer and prompt as evaluate.

    python -m petqlora.serve --adapter DIR_OR_GS_URI [--base-model ...] [--port ...]

contract.py     port, routes, command and env names (the registration's container spec imports them)
serving_info.py serving.json: what train_adapter writes beside the adapter so the folder alone can be served
config.py       ServeConfig, the typed config read from arguments and the AIP_* environment
instances.py    a prediction request checked and decoded into images, or refused with one 4xx message
predictor.py    the model loaded as evaluate loads it, and its scores turned into predictions
app.py          the FastAPI app: health (503 while loading), predict (one scoring at a time)
parity.py       the served predictions against evaluate's, over HTTP (the check_serving step)
"""
