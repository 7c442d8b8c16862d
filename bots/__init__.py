"""The clinical bots: one module per bot, each exporting ``BOT`` (a declaration plus a pure
``compute``). docs/BOTS.md describes each bot and how to add one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bots.blood_pressure import BOT as BLOOD_PRESSURE
from bots.bmi import BOT as BMI
from bots.egfr import BOT as EGFR
from bots.hba1c import BOT as HBA1C
from bots.obesity import BOT as OBESITY

if TYPE_CHECKING:
    from app.botkit.declaration import Bot

ALL_BOTS: tuple[Bot, ...] = (BMI, OBESITY, BLOOD_PRESSURE, EGFR, HBA1C)


def bot_by_name(name: str) -> Bot:
    """The bot declared under ``name``; ``KeyError`` naming the known bots otherwise."""
    for bot in ALL_BOTS:
        if bot.declaration.name == name:
            return bot
    known = ", ".join(bot.declaration.name for bot in ALL_BOTS)
    msg = f"unknown bot {name!r}; known bots: {known}"
    raise KeyError(msg)


__all__ = ["ALL_BOTS", "bot_by_name"]
