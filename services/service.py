"""The reference project's BentoML entrypoint (``bentoml serve services.service:ScoringService``,
``bentofile.yaml``): mlcycle's one generic service, which lives in the package so an installed
mlcycle serves any project without a copy of it (``mlcycle.service``)."""

from mlcycle.service import ClientErrorsOneLine, ScoringService, api_document

__all__ = ["ClientErrorsOneLine", "ScoringService", "api_document"]
