-- 0008: how hard an agent's model thinks before it speaks (relay/models.py REASONING_EFFORTS),
-- sent to the models that reason (the gpt-realtime-2 line) as session.reasoning.effort. Agents
-- stored before get 'low', OpenAI's suggested start: more effort is latency the caller hears.

ALTER TABLE agents ADD COLUMN reasoning_effort TEXT NOT NULL DEFAULT 'low'
    CHECK (reasoning_effort IN ('minimal', 'low', 'medium', 'high', 'xhigh'));
