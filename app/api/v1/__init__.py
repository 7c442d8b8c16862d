"""Version 1 of the public API. Breaking changes go to a new version with a deprecation plan.

Each domain owns its endpoints module; this router only mounts them."""

from fastapi import APIRouter

from app.events import endpoints as event_endpoints
from app.ops import endpoints as ops_endpoints
from app.partners import endpoints as partner_endpoints
from app.research import endpoints as research_endpoints

router = APIRouter(prefix="/v1")
router.include_router(event_endpoints.router)
router.include_router(partner_endpoints.router)
router.include_router(ops_endpoints.router)
router.include_router(research_endpoints.router)
