"""A tiny Ray Serve application for examples/rayservice-hello.yaml: it answers with the greeting of its
`user_config` (so a change to serveConfigV2 alone changes the answer) and the GCS address of the Ray cluster
it runs on (so an upgrade to a new cluster shows)."""
import ray
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Hello:
    def __init__(self) -> None:
        self.greeting = "hello"

    def reconfigure(self, config: dict) -> None:
        self.greeting = config.get("greeting", "hello")

    def __call__(self, request) -> str:
        return f"{self.greeting} from the Ray cluster at {ray.get_runtime_context().gcs_address}\n"


app = Hello.bind()
