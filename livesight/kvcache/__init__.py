"""Cache layers, position bookkeeping and eviction policies of the streaming KV cache."""

from livesight.kvcache.cache import StreamCache
from livesight.kvcache.policy import KeepAll, WindowPolicy
from livesight.kvcache.table import Segment, TokenTable

__all__ = ["KeepAll", "Segment", "StreamCache", "TokenTable", "WindowPolicy"]
