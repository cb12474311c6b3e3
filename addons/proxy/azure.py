"""Azure OpenAI's per-account hosts and deployments: which resources a caller may reach, and what a
deployment costs.

Azure serves each customer's models at `{resource}.openai.azure.com`, a host the catalog matches with
the pattern `*.openai.azure.com`, and each model under a deployment name the customer chose
(`/openai/deployments/{name}/chat/completions`). Anyone can create a resource under that suffix, so the
operator's key is sent only to the resources the operator lists (`providers.azure.resources`); a
request for another one is refused before anything is sent, unless the caller brought its own key.
The deployment is priced as the model the operator maps it to (`providers.azure.deployments`), else
as the model the response names.
"""

from __future__ import annotations

from addons.core.catalog import Provider, pattern_label
from addons.core.errors import Forbidden


def check_resource(provider: Provider, host: str, *, callers_key: bool) -> None:
    """Refuse a pattern host whose label (the Azure resource) the operator did not list, for the operator's key."""
    if callers_key or not provider.host_suffixes:
        return
    label = pattern_label(host.lower().rstrip("."), provider.host_suffixes)
    if label is not None and label not in provider.resources:
        listed = ", ".join(sorted(provider.resources)) or "none"
        raise Forbidden("resource_not_allowed",
                        f"{host} is not one of the {provider.name} resources this gateway serves ({listed}); "
                        f"the operator lists them in gateway.yaml: providers.{provider.id}.resources")


def deployment_model(provider: Provider, deployment: str | None) -> str | None:
    """The model the operator maps a deployment to, which prices it over what the response says."""
    return provider.model_of_deployment(deployment)
