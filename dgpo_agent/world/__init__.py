"""The embedded world: a synthetic encyclopedia, questions about it, and a scripted expert.

``generate_world`` writes the corpus and entity-disjoint question splits; ``OraclePolicy`` answers
any question of the world's grammar by searching and reading, the way a trained agent should.
"""

from dgpo_agent.world.files import WorldDir, generate_world, load_kb, load_questions
from dgpo_agent.world.grammar import DATA_SOURCES
from dgpo_agent.world.kb import WorldConfig
from dgpo_agent.world.names import NameGenerator
from dgpo_agent.world.oracle import OraclePolicy

__all__ = [
    "DATA_SOURCES", "NameGenerator", "OraclePolicy", "WorldConfig", "WorldDir", "generate_world", "load_kb", "load_questions",
]
