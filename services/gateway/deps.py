"""FastAPI dependencies as `Annotated` aliases over the lifespan's state."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from imagegen.blobstore import BlobStore
from imagegen.kafka import Publisher
from services.gateway.notify import EventSignal
from services.gateway.offers import Offers
from services.gateway.offers import from_settings as offers_from
from services.gateway.settings import GatewaySettings
from services.gateway.state import GatewayState


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


def get_settings(state: StateDep) -> GatewaySettings:
    return state.settings


def get_pool(state: StateDep) -> asyncpg.Pool:
    return state.pool


def get_blobs(state: StateDep) -> BlobStore:
    return state.blobs


def get_publisher(state: StateDep) -> Publisher:
    return state.publisher


def get_signal(state: StateDep) -> EventSignal:
    return state.signal


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
SignalDep = Annotated[EventSignal, Depends(get_signal)]


def get_offers(state: StateDep) -> Offers:
    return offers_from(state.settings)


OffersDep = Annotated[Offers, Depends(get_offers)]
